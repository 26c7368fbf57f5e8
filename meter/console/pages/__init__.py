"""The console's pages, one module per page (or resource), each a Litestar Controller whose handlers
are thin: read the form, call the admin service functions, render."""
