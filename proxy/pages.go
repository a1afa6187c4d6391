package proxy

import (
	"html"
	"net/http"
	"strconv"
	"strings"
)

// writePage answers with an error page: HTML for browsers, plain text for
// other clients. title is the short reason, detail a sentence for a human.
func writePage(w http.ResponseWriter, r *http.Request, status int, title, detail string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	var body string
	if wantsHTML(r) {
		h.Set("Content-Type", "text/html; charset=utf-8")
		body = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" +
			strconv.Itoa(status) + " " + html.EscapeString(title) + "</title></head>\n<body><h1>" +
			html.EscapeString(title) + "</h1>\n<p>" + html.EscapeString(detail) + "</p></body></html>\n"
	} else {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		body = strconv.Itoa(status) + " " + title + "\n" + detail + "\n"
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// wantsHTML reports whether the client is a browser: it accepts text/html.
func wantsHTML(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		if strings.Contains(v, "text/html") {
			return true
		}
	}
	return false
}

// writeNotFound answers 404 for a host no repl has.
func writeNotFound(w http.ResponseWriter, r *http.Request) {
	writePage(w, r, http.StatusNotFound, "Not Found", "There is no repl at "+hostForPage(r.Host)+".")
}

// hostForPage shortens a Host for an error page.
func hostForPage(host string) string {
	if len(host) > 100 {
		return host[:100] + "…"
	}
	return host
}

// writeWakingPage answers a browser waiting for a sleeping repl: a 503
// that reloads itself every second (Retry-After for clients that read it,
// a meta refresh for the browser) until the repl answers instead.
func writeWakingPage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Retry-After", "1")
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(wakingPage)))
	w.WriteHeader(http.StatusServiceUnavailable)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(wakingPage))
	}
}

const wakingPage = `<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1"><title>Waking up…</title>
<style>body{font-family:system-ui,sans-serif;text-align:center;margin-top:20vh;color:#333}</style></head>
<body><h1>Waking up…</h1>
<p>This repl was asleep and is starting. This page reloads by itself.</p></body></html>
`
