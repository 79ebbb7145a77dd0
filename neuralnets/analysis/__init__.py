"""What a trained model found: fixed points and linearised dynamics, rotational structure (jPCA),
inferred-input events; `neuralnets-analyze RUN_DIR` writes them as a report and TensorBoard figures."""
