"""Early-exit text generation on the device (no torch): a decoder bundle's segments and
shared head under ONNX Runtime, with key/value caches bound in place, decoded in full,
self-speculatively (the first segments draft, the rest verify) or with early exits,
greedily or sampled, whole or streamed, ending at stop sequences."""

from edgeexit.generation import text
from edgeexit.generation.generator import Generation, Generator, Stream
from edgeexit.generation.options import MODES, ModeChoice, SpeculativeOptions, chosen_mode
from edgeexit.generation.sampling import SamplingOptions

__all__ = ["MODES", "Generation", "Generator", "ModeChoice", "SamplingOptions",
           "SpeculativeOptions", "Stream", "chosen_mode", "text"]  # fmt: skip
