"""On-device runtime: ONNX Runtime vision + llama.cpp LLM. Imports no torch."""
