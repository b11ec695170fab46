// Prints the requests and responses of curl processes, with their addresses, until Ctrl-C.
// From integrations/apidump, as root: ./offline.sh go run ./example node ../../dist/helper/cli.js
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/https-capture/integrations/apidump"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c, err := apidump.Start(ctx, apidump.Options{Command: os.Args[1:], Comms: []string{"curl"}, Stderr: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for ev := range c.Events {
		if r, ok := ev.(*apidump.Ready); ok {
			// Every TLS file found at start has its probes: say "capturing" only now.
			fmt.Fprintf(os.Stderr, "capturing (%d TLS files probed, %d failed)\n", r.Libraries, r.Failed)
		}
		if s, ok := ev.(*apidump.SSLEvent); ok {
			arrow := map[uint8]string{apidump.DirEgress: "->", apidump.DirIngress: "<-"}[s.Dir]
			fmt.Printf("%s[%d] conn %d %s:%d %s %s:%d, %d bytes at offset %d\n%s\n", s.Comm, s.Pid, s.ConnID,
				s.LocalIP, s.LocalPort, arrow, s.RemoteIP, s.RemotePort, len(s.Data), s.Seq, s.Data)
		}
	}
	if err := c.Wait(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
