"""Keyed, blind, robust watermarks for ONNX weights."""
