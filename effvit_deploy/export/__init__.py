"""Stage 2: lower trained models to ONNX, TensorRT and Torch-TensorRT, and verify them."""
