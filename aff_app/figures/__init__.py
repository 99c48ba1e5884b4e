"""Plotly figures and the 3D viewer: pure builders (arrays in, figures out; no Streamlit)."""
