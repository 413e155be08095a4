"""shitu: product recognition on the CPU with PP-LCNet-2.5x, ONNX Runtime, FAISS and SQLite."""

__version__ = "0.1.0"
