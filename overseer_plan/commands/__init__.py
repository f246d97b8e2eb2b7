"""One module per CLI verb. Each is a thin shell: parse options, call one API function, render."""
