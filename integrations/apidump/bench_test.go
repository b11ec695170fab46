package apidump

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// BenchmarkEvents reads a recorded frame stream through Start and Events, as a host does,
// and discards the events: the package's own cost per byte of frames (b.SetBytes gives MB/s;
// ns/op is one pass over the file). HTTPS_CAPTURE_FRAMES names a stream recorded with
// `https-capture --ipc > file` under a load; without it, the nginx-keepalive fixture.
//
//	./offline.sh go test -run - -bench . -benchmem
func BenchmarkEvents(b *testing.B) { benchmarkStream(b, 0) }

// BenchmarkBatches: the same stream on Batches (Options.Batch 256).
func BenchmarkBatches(b *testing.B) { benchmarkStream(b, 256) }

func benchmarkStream(b *testing.B, batch int) {
	file := os.Getenv("HTTPS_CAPTURE_FRAMES")
	if file == "" {
		file = filepath.Join("..", "..", "fixtures", "nginx-keepalive.frames")
	}
	st, err := os.Stat(file)
	if err != nil {
		b.Fatalf("cannot read the frame stream: %v (set HTTPS_CAPTURE_FRAMES to a file from https-capture --ipc)", err)
	}
	b.SetBytes(st.Size())
	b.ReportAllocs()
	cpu0 := cpuSeconds()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := Start(context.Background(), Options{Command: []string{"sh", "-c", `exec cat "$0"`, file}, Batch: batch})
		if err != nil {
			b.Fatal(err)
		}
		if batch > 0 {
			for range c.Batches {
			}
		} else {
			for range c.Events {
			}
		}
		if err := c.Wait(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// This process's CPU (not cat's): what the host pays, comparable with the bench's
	// "host CPU s per 100 MB" column.
	b.ReportMetric((cpuSeconds()-cpu0)/(float64(b.N)*float64(st.Size())/100e6), "cpu-s/100MB")
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
