"""One script per page of the Streamlit app; each has ``render(backend)`` and runs it when
Streamlit executes the file."""
