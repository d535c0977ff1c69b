"""`transfer export`: a trained model as a self-contained folder. The folder written atomically
(folder.py), the round-trip check (check.py), one module per format (onnx_format.py,
torchscript_format.py, safetensors_format.py, hf_format.py) and the model card (card.py)."""
