"""The paper's Table I, Fig. 3 and Fig. 5 on the MD17 data beside the project."""
