// Command testhttp is the smoke-test image of the local e2e cluster: a static
// HTTP server whose /healthz is the readiness probe and whose /probe?addr=H:P
// reports whether a TCP connection to H:P (e.g. the host's bridge IP) succeeds,
// and whose /k8sapi calls the API server the way in-cluster clients do
// (KUBERNETES_SERVICE_HOST, the service account token and CA) and returns
// the status and body of GET /api/v1/namespaces/<ns>/pods.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func k8sAPI(w http.ResponseWriter, _ *http.Request) {
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ns, _ := os.ReadFile(saDir + "/namespace")
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	url := "https://" + net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")) +
		"/api/v1/namespaces/" + strings.TrimSpace(string(ns)) + "/pods"
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := client.Do(req)
	if err != nil {
		http.Error(w, "GET "+url+": "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(w, "%d %s\n", resp.StatusCode, body)
}

func main() {
	addr := ":8080"
	if v := os.Getenv("LISTEN"); v != "" {
		addr = v
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/probe", func(w http.ResponseWriter, r *http.Request) {
		target := r.URL.Query().Get("addr")
		c, err := net.DialTimeout("tcp", target, 3*time.Second)
		if err != nil {
			http.Error(w, "dial "+target+": "+err.Error(), http.StatusBadGateway)
			return
		}
		c.Close()
		fmt.Fprintln(w, "reached", target)
	})
	http.HandleFunc("/k8sapi", k8sAPI)
	log.Printf("testhttp listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
