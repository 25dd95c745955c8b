"""Inputs that are not chest X-rays: cheap image checks (`image_checks`, torch-free), a detector on
the backbone's pooled features (`detector`, torch-free), and what the predictor, the server and
`cxr evaluate` do with them (`guard`, `fit`)."""
