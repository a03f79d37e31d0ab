"""Models the project makes: the tiny default pair (built from a seed on first use), and the
export of any HF checkpoint to GGUF with llama.cpp's own tools."""
