"""TAI's operator console: static files (HTML, ES modules, CSS) the browser runs against the
API's JSON routes, served from the gateway's own origin."""
