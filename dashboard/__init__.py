"""GameRec's Streamlit dashboard, a client of the HTTP service: `streamlit run dashboard/app.py`."""
