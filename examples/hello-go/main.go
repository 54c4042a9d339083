// hello-go: a tiny HTTP service for fleet's example image.
//
//	GET /health   -> 200 "ok"
//	GET /version  -> 200 with the app version
//	anything else -> 404
//
// Environment: PORT (default 8080; 0 picks a free port), BIND (default 0.0.0.0),
// FLEET_APP_VERSION (set by the board; falls back to the version linked in by fleet).
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// version is set at link time by fleet build (-X main.version=...).
var version = "unknown"

func appVersion() string {
	if v := os.Getenv("FLEET_APP_VERSION"); v != "" {
		return v
	}
	return version
}

// statusRecorder remembers the status code so each request can be logged once.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func handler(w http.ResponseWriter, req *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	rec.Header().Set("Content-Type", "text/plain")
	switch {
	case req.Method == http.MethodGet && req.URL.Path == "/health":
		fmt.Fprint(rec, "ok\n")
	case req.Method == http.MethodGet && req.URL.Path == "/version":
		fmt.Fprintf(rec, "%s\n", appVersion())
	default:
		rec.WriteHeader(http.StatusNotFound)
		fmt.Fprint(rec, "not found\n")
	}
	log.Printf("%s %s %q %d", req.RemoteAddr, req.Method, req.URL.Path, rec.status)
}

func main() {
	log.SetFlags(0)
	log.SetOutput(os.Stderr)
	port := 8080
	if text := os.Getenv("PORT"); text != "" {
		p, err := strconv.Atoi(text)
		if err != nil || p < 0 || p > 65535 {
			log.Fatal("hello-go: PORT must be a number from 0 to 65535")
		}
		port = p
	}
	bind := os.Getenv("BIND")
	if bind == "" {
		bind = "0.0.0.0"
	}
	listener, err := net.Listen("tcp4", net.JoinHostPort(bind, strconv.Itoa(port)))
	if err != nil {
		log.Fatalf("hello-go: %v", err)
	}
	log.Printf("hello-go %s listening on %s", appVersion(), listener.Addr())
	server := &http.Server{
		Handler:           http.HandlerFunc(handler),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
	}
	log.Fatal(server.Serve(listener))
}
