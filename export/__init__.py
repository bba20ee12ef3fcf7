"""roiedge export: converts the Keras detector to TFLite and ONNX artifacts (never edits the model)."""
