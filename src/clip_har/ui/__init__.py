"""The Streamlit app (``clip-har ui``): predict, open vocabulary, batch, model, monitoring
and a live camera page, all talking to the service through :class:`clip_har.client.HARClient`.

``app.py`` is the script ``streamlit run`` executes; ``pages/`` holds one script per page.
See docs/apps.md ("Streamlit app").
"""
