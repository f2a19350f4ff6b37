"""Measure a bundle on the device, through the runtime: what each exit costs (``profiling``,
saved as a cost profile, ``cost_profile``), and how the bundle does as deployed (``bench``,
with a held-out ``verdict`` on the budget calibrate promised). Every timing loop here uses
the rounds and statistics of ``rounds``. Device side: onnxruntime, numpy and rich only."""
