"""What is made of the pooled states besides the dense vector: sparse lexical vectors, the lexical
half, quantized precisions, and the scores that fuse them."""
