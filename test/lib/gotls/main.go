// gotls: a Go HTTPS server and client for the kernel tests, standard library only, built
// during the tests with Debian's golang-go. The server answers every request with the body
// the test asks for; the client makes requests over HTTP/1.1 or HTTP/2 and prints what it got.
//
//	gotls server ADDR CERT KEY           serves until killed; prints "listening" when ready
//	gotls client URL [flags]             see the flags below
//	gotls version                        prints the build's tag (-X main.buildTag)
//	gotls closewrite CERT KEY SIZE       a Write of SIZE bytes to a peer that reads nothing,
//	                                     broken by Close from another goroutine; prints
//	                                     "wrote N" (the bytes Write says it wrote)
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
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

// closeWrite makes a call that is still running when its socket is closed: a TLS Write
// blocked on a full socket buffer (the peer, in this process, never reads), and a Close from
// another goroutine that breaks it. The records written before the Close went out on the
// socket, and Write reports them in its count.
func closeWrite(cert, key string, size int) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
		}
		accepted <- c // and never read from it
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	peer := <-accepted
	done := make(chan int)
	b := body(size) // made before the Write starts: under emulation making it takes longer than the sleep
	go func() {
		n, _ := c.Write(b)
		done <- n
	}()
	time.Sleep(500 * time.Millisecond) // the Write fills the socket buffers and blocks
	c.Close()
	fmt.Printf("wrote %d\n", <-done)
	peer.Close()
}

// buildTag is set with -ldflags=-X main.buildTag=... so that each build is another file with
// another build id (bench/first-run.ts: the first run of a freshly built client).
var buildTag = "dev"

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Println(buildTag)
		return
	}
	if len(os.Args) >= 5 && os.Args[1] == "closewrite" {
		n, _ := strconv.Atoi(os.Args[4])
		closeWrite(os.Args[2], os.Args[3], n)
		return
	}
	if len(os.Args) >= 5 && os.Args[1] == "server" {
		server(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) >= 3 && os.Args[1] == "client" {
		client(os.Args[2:])
		return
	}
	fmt.Fprintln(os.Stderr, "usage: gotls server ADDR CERT KEY | gotls client URL [-http2] [-count N] [-post N] [-wait D] | gotls closewrite CERT KEY SIZE")
	os.Exit(2)
}
