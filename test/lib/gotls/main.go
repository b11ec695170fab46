// gotls: a Go HTTPS server and client for the kernel tests, standard library only, built
// during the tests with Debian's golang-go. The server answers every request with the body
// the test asks for; the client makes requests over HTTP/1.1 or HTTP/2 and prints what it got.
//
//	gotls server ADDR CERT KEY           serves until killed; prints "listening" when ready
//	gotls client URL [flags]             see the flags below
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"
)

// body is n bytes of a repeating pattern the test can check.
func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

func server(addr, cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		in, _ := io.ReadAll(r.Body)
		n, _ := strconv.Atoi(r.URL.Query().Get("size"))
		w.Header().Set("X-Request-Bytes", strconv.Itoa(len(in)))
		w.Header().Set("X-Proto", r.Proto)
		w.Write(body(n))
	})
	srv := &http.Server{Addr: addr, Handler: mux}
	fmt.Println("listening")
	if err := srv.ListenAndServeTLS(cert, key); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	h2 := fs.Bool("http2", false, "use HTTP/2")
	count := fs.Int("count", 1, "requests, on one connection")
	post := fs.Int("post", 0, "POST a body of this many bytes")
	wait := fs.Duration("wait", 0, "wait this long before the first request")
	fs.Parse(args[1:])
	url := args[0]
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: *h2}
	if !*h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	time.Sleep(*wait)
	for i := 0; i < *count; i++ {
		var r *http.Response
		var err error
		if *post > 0 {
			r, err = c.Post(url, "application/octet-stream", bytes.NewReader(body(*post)))
		} else {
			r, err = c.Get(url)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		fmt.Printf("%s %s %d\n", r.Proto, r.Status, len(b))
	}
}

func main() {
	if len(os.Args) >= 5 && os.Args[1] == "server" {
		server(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) >= 3 && os.Args[1] == "client" {
		client(os.Args[2:])
		return
	}
	fmt.Fprintln(os.Stderr, "usage: gotls server ADDR CERT KEY | gotls client URL [-http2] [-count N] [-post N] [-wait D]")
	os.Exit(2)
}
