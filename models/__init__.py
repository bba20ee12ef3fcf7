"""roiedge models: Keras definitions, procedural data, training and evaluation."""
