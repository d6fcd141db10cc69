"""The text side without torch: tokenizer, numpy and onnxruntime towers, export, embedding cache."""
