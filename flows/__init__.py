"""Prefect flows over the seggen stage functions (one implementation: the flows call seggen/)."""
