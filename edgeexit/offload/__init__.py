"""Split deployment, the device's side and the wire: samples not confident enough at the
split exit finish on a server (docs/serving.md). Standard library and numpy only: the
server (Ray Serve) lives in ``edgeexit.serve``, on the host side."""
