"""Learned per-token routers (R2R, CITER): labelling, features, the router network and its
ONNX export for the edge (relayllm.edge.token_router)."""
