"""rooflight: roofline performance analyzer and bottleneck diagnoser for LLM workloads on GPUs."""

__version__ = "0.1.0"
