"""Unlearning methods, one file each; see unlearnbench/method_api.py for the interface."""
