"""Generated gRPC contracts (do not edit the *_pb2* files; run tools/genproto.py)."""
