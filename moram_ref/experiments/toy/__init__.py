"""The NumPy continual-learning demo: associative recall (synthetic) and digits (real data)."""
