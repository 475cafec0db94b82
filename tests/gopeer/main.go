// Command gopeer is a test client for mtt-mu-server that behaves like
// mos-tls-tunnel's mtt-client -wss: it dials the server (TLS or plain TCP),
// upgrades to WebSocket on a user's path offering smux_on / smux_off / nothing,
// checks the selected subprotocol, then runs one test mode through the user's
// echo backend (dst) and prints ONE line of JSON on stdout. Exit 0 iff ok.
//
// Tunnel kinds: plain (smux_off: the WebSocket payload is the byte stream) and
// mux (smux_on: an xtaci/smux v1 client session over the WebSocket byte stream,
// with mtt-client's settings). Modes:
//
//	echo      -streams K streams (mux) or K WebSocket connections (plain), each
//	          sends -bytes N pseudo-random bytes in -chunk C writes while reading
//	          the echo back concurrently and comparing it byte by byte.
//	refuse    (mux) start K echo streams, then open stream K+1: it must read EOF
//	          with no data within -refuse-wait (a FIN from the server); the K
//	          streams must still complete, and then (the K closed) a fresh
//	          stream must complete an echo of N bytes.
//	halfclose (mux) like echo, but stream 0 writes N/2 bytes and closes at once
//	          (a client FIN with echo data still in flight; it reads meanwhile,
//	          as a stream that never read would stall the whole Go v1 session);
//	          then a fresh stream must complete an echo of N bytes.
//	upload    (mux) each of K streams writes N bytes and closes at once (a
//	          client FIN), reading and dropping whatever comes back meanwhile
//	          (for a dst that sends while it reads: the test checks at dst that
//	          every byte arrived). streams_ok counts streams whose writes all
//	          succeeded. Then it prints "uploaded" on stderr and holds the session
//	          open as stall does (closing it at once could reset the connection
//	          with bytes still on their way: the kernel does that to a socket
//	          closed with unread bytes).
//	serverclose (mux) like echo, but a stream may end early with an EOF from
//	          the server (its dst closed, or it timed out): it counts in
//	          streams_closed_by_server if the bytes before the EOF were right;
//	          then a fresh stream must complete an echo of N bytes.
//	retry     (mux) open a stream and echo N bytes on it; while the stream
//	          gets EOF with no data (a FIN: dst unreachable), count it in
//	          streams_refused and try a new stream 50 ms later, until one
//	          completes its echo (streams_ok) or -timeout.
//	stall     stream/connection 0 writes N bytes and does not read until its
//	          writes make no progress for -stall-detect (write_blocked=true) or
//	          all are written; it waits -hold more (measure the server's memory
//	          now), then reads and verifies the whole echo. In mux mode streams
//	          1..K-1 run echo meanwhile (they stall too: Go smux v1 has only a
//	          session-wide receive budget).
//	push      (mux) stream 0 writes N bytes and expects nothing back (a dst
//	          that does not read): blocked detection as in stall, wait -hold,
//	          then close the session. ok unless a write failed before that.
//	badver    (mux) send a SYN then a frame with version 2; the server must end
//	          the connection (ok = it did, within -timeout).
//	badcmd    (mux) the same with cmd -badcmd (default 4, UPD: version 2 only;
//	          note Go smux 1.5.16 itself accepts UPD in a v1 session).
//
// -idle D sleeps after set-up (streams opened) and before transferring: use it
// to exercise keepalives (NOPs) and idle timeouts. -read-delay D (echo and
// serverclose, mux) lets the streams write at once but read only after D: the
// whole session stalls meanwhile (Go smux v1 stops reading the connection once
// its receive budget is spent).
//
// stall and push print "blocked N" on stderr when writes stop making progress
// (N bytes written), upload prints "uploaded" when its streams are done. With
// -hold-stdin the hold then ends when stdin reaches EOF (or after -hold,
// whichever is first): the caller can measure while it lasts.
//
// Build: tests/gopeer/build.sh OUT (GOPATH mode against Debian's Go packages).
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/xtaci/smux"
)

var (
	addr        = flag.String("addr", "127.0.0.1:443", "server HOST:PORT")
	useTLS      = flag.Bool("tls", false, "TLS (wss, InsecureSkipVerify, no ALPN); else plain TCP (ws)")
	sni         = flag.String("sni", "", "TLS server name (default: host of -addr; none for an IP)")
	host        = flag.String("host", "", "Host header (default: -addr)")
	path        = flag.String("path", "/", "request path (selects the user)")
	proto       = flag.String("proto", "smux_off", "offered subprotocols: smux_on, smux_off, a comma list, or none")
	expect      = flag.String("expect", "auto", "expected selected subprotocol: auto (per SPEC 4.2), any, none, smux_on, smux_off")
	defMux      = flag.Bool("mux", false, "use smux when the server selects no subprotocol (the server's -mux)")
	mode        = flag.String("mode", "echo", "echo, refuse, halfclose, upload, serverclose, retry, stall, push, badver, badcmd")
	streams     = flag.Int("streams", 1, "streams (mux) or connections (plain)")
	nbytes      = flag.Int64("bytes", 1<<20, "bytes to send (and verify) per stream")
	chunk       = flag.Int("chunk", 16384, "bytes per write (plain: one WebSocket message per write)")
	wsbuf       = flag.Int("wsbuf", 0, "gorilla read/write buffer size; messages larger than it are fragmented (0: gorilla's 4096)")
	seed        = flag.Uint64("seed", 1, "seed of the pseudo-random data")
	timeout     = flag.Duration("timeout", 30*time.Second, "overall deadline; exceeding it fails the run")
	idle        = flag.Duration("idle", 0, "sleep after set-up, before transferring")
	readDelay   = flag.Duration("read-delay", 0, "echo, serverclose (mux): streams write at once but start reading only after this")
	refuseWait  = flag.Duration("refuse-wait", 5*time.Second, "refuse: how long the extra stream may take to see EOF")
	stallDetect = flag.Duration("stall-detect", time.Second, "stall: no write progress for this long = blocked")
	hold        = flag.Duration("hold", 3*time.Second, "stall, push, upload: how long to hold (not reading, or the session open)")
	holdStdin   = flag.Bool("hold-stdin", false, "stall, push, upload: end the hold early when stdin reaches EOF")
	badCmd      = flag.Uint("badcmd", 4, "badcmd: the cmd byte to send (with an 8-byte payload)")
)

// result is the final JSON line. Counters are updated atomically.
type result struct {
	OK             bool    `json:"ok"`
	Mode           string  `json:"mode"`
	Tunnel         string  `json:"tunnel"` // "plain" or "mux"
	SelectedProto  string  `json:"selected_proto"`
	StreamsOK      int64   `json:"streams_ok"`
	StreamsRefused int64   `json:"streams_refused"` // EOF before any byte came back
	StreamsFailed  int64   `json:"streams_failed"`
	StreamsClosed  int64   `json:"streams_closed_early"`     // halfclose: closed by us mid-transfer
	ServerClosed   int64   `json:"streams_closed_by_server"` // serverclose: EOF before all bytes came back
	BytesVerified  int64   `json:"bytes_verified"`
	StallWritten   int64   `json:"stall_bytes_written"` // stall: bytes written when writes blocked
	WriteBlocked   bool    `json:"write_blocked"`
	NOPs           int64   `json:"nops_received"` // mux: smux frames seen from the server
	FINs           int64   `json:"fins_received"`
	MaxFrame       int64   `json:"max_frame_received"` // largest PSH payload
	WSClose        int64   `json:"ws_close_code"`      // close code received (plain / bad*), 0 if none
	ElapsedMS      int64   `json:"elapsed_ms"`
	Mbps           float64 `json:"mbps"` // verified bytes over the transfer phase, one direction
	Error          string  `json:"error"`
}

var (
	res       result
	errMu     sync.Mutex
	emitOnce  sync.Once
	start     = time.Now()
	xferStart time.Time
)

// setErr records the first error (later ones are appended, briefly).
func setErr(err error) {
	errMu.Lock()
	defer errMu.Unlock()
	if res.Error == "" {
		res.Error = err.Error()
	} else if len(res.Error) < 500 {
		res.Error += "; " + err.Error()
	}
}

// finish prints the JSON line once and exits.
func finish() {
	emitOnce.Do(func() {
		errMu.Lock()
		r := res
		errMu.Unlock()
		r.OK = r.Error == ""
		r.ElapsedMS = time.Since(start).Milliseconds()
		if !xferStart.IsZero() {
			r.Mbps = float64(atomic.LoadInt64(&res.BytesVerified)) * 8 / time.Since(xferStart).Seconds() / 1e6
		}
		out, _ := json.Marshal(r)
		fmt.Println(string(out))
		os.Exit(map[bool]int{true: 0, false: 1}[r.OK])
	})
	select {} // another goroutine is exiting
}

func fail(err error) { setErr(err); finish() }

// The data: stream id's byte at offset off is pattern[(id*prime+off) % patLen].
// pattern holds two copies so any window of <= patLen bytes is contiguous.
const patLen = 1<<20 - 3

var pattern []byte

func initPattern(s uint64) {
	pattern = make([]byte, 2*patLen)
	x := s*0x9E3779B97F4A7C15 | 1
	for i := 0; i < patLen; i++ { // xorshift64
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		pattern[i] = byte(x >> 32)
	}
	copy(pattern[patLen:], pattern[:patLen])
}

func window(id int, off int64, n int) []byte {
	s := (int64(id)*104729 + off) % patLen
	return pattern[s : s+int64(n)]
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

var errRefused = errors.New("EOF before any data (refused)")

// echo writes n bytes of stream id's data to p in chunk-sized writes while
// reading the echo back and comparing it. The reader waits for gate (if not
// nil); *written tracks the bytes written so far. Returns the bytes verified.
func echo(p io.ReadWriter, id int, n int64, gate <-chan struct{}, written *int64) (int64, error) {
	werr := make(chan error, 1)
	go func() { werr <- send(p, id, n, written) }()
	if gate != nil {
		<-gate
	}
	return verify(p, id, n, werr)
}

// send writes n bytes of stream id's data in -chunk writes.
func send(p io.Writer, id int, n int64, written *int64) error {
	for off := int64(0); off < n; {
		c := min64(int64(*chunk), n-off)
		if _, err := p.Write(window(id, off, int(c))); err != nil {
			return fmt.Errorf("stream %d: write at %d: %v", id, off, err)
		}
		off += c
		if written != nil {
			atomic.StoreInt64(written, off)
		}
	}
	return nil
}

// verify reads n bytes and compares them with stream id's data; then it
// returns the writer's outcome from werr (nil: do not wait for it).
func verify(p io.Reader, id int, n int64, werr chan error) (int64, error) {
	buf := make([]byte, 65536)
	var got int64
	for got < n {
		m, err := p.Read(buf[:min64(int64(len(buf)), n-got)])
		if m > 0 {
			if !bytes.Equal(buf[:m], window(id, got, m)) {
				return got, fmt.Errorf("stream %d: echo differs in bytes %d..%d", id, got, got+int64(m))
			}
			got += int64(m)
		}
		if err != nil {
			if got == 0 && err == io.EOF {
				return 0, errRefused
			}
			return got, fmt.Errorf("stream %d: read after %d of %d bytes: %w", id, got, n, err)
		}
	}
	if werr == nil {
		return got, nil
	}
	return got, <-werr
}

// record adds one stream's outcome to the result.
func record(v int64, err error) {
	atomic.AddInt64(&res.BytesVerified, v)
	switch {
	case err == nil:
		atomic.AddInt64(&res.StreamsOK, 1)
	case errors.Is(err, errRefused):
		atomic.AddInt64(&res.StreamsRefused, 1)
		setErr(err)
	default:
		atomic.AddInt64(&res.StreamsFailed, 1)
		setErr(err)
	}
}

// stall runs the stall mode on p (see the package comment).
func stall(p io.ReadWriter, id int) {
	var written int64
	gate, done := make(chan struct{}), make(chan struct{})
	go func() { record(echo(p, id, *nbytes, gate, &written)); close(done) }()
	waitBlocked(&written)
	holdOn()
	close(gate)
	<-done
}

// waitBlocked polls *written until all -bytes are written or it has not moved
// for -stall-detect (write_blocked, and "blocked N" on stderr); it records
// stall_bytes_written.
func waitBlocked(written *int64) {
	last, since := int64(-1), time.Now()
	for {
		time.Sleep(20 * time.Millisecond)
		w := atomic.LoadInt64(written)
		if w >= *nbytes {
			break
		} else if w != last {
			last, since = w, time.Now()
		} else if time.Since(since) >= *stallDetect {
			errMu.Lock()
			res.WriteBlocked = true
			errMu.Unlock()
			fmt.Fprintf(os.Stderr, "blocked %d\n", w)
			break
		}
	}
	atomic.StoreInt64(&res.StallWritten, atomic.LoadInt64(written))
}

// holdOn waits -hold, or with -hold-stdin until stdin ends if that is sooner.
func holdOn() {
	if !*holdStdin {
		time.Sleep(*hold)
		return
	}
	eof := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(eof) }()
	select {
	case <-eof:
	case <-time.After(*hold):
	}
}

// push runs the push mode on st, then closes the session.
func push(sess *smux.Session, st *smux.Stream) {
	var written, closing int64
	go func() {
		err := send(st, 0, *nbytes, &written)
		if err != nil && atomic.LoadInt64(&closing) == 0 {
			setErr(err)
		}
	}()
	waitBlocked(&written)
	holdOn()
	atomic.StoreInt64(&closing, 1)
	sess.Close() // also ends writes still blocked
}

// retry runs the retry mode on sess.
func retry(sess *smux.Session) {
	for id := 0; ; id++ {
		st, err := sess.OpenStream()
		if err != nil {
			fail(fmt.Errorf("open stream %d: %v", id, err))
		}
		v, err := echo(st, id, *nbytes, nil, nil)
		st.Close()
		if errors.Is(err, errRefused) {
			atomic.AddInt64(&res.StreamsRefused, 1)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		record(v, err)
		return
	}
}

// wsPipe turns a WebSocket into a byte stream: Write sends one binary
// message per call; Read reads across message boundaries. With track set it
// follows the smux frames it reads to count NOPs and FINs from the server.
type wsPipe struct {
	c     *websocket.Conn
	r     io.Reader
	track bool
	hdr   [8]byte
	hn    int
	skip  int
}

func (w *wsPipe) Read(b []byte) (int, error) {
	for {
		if w.r == nil {
			_, r, err := w.c.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					atomic.StoreInt64(&res.WSClose, int64(ce.Code))
				}
				return 0, err
			}
			w.r = r
		}
		n, err := w.r.Read(b)
		if w.track {
			w.scan(b[:n])
		}
		if err == io.EOF {
			w.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (w *wsPipe) scan(b []byte) {
	for len(b) > 0 {
		if w.skip > 0 {
			k := int(min64(int64(w.skip), int64(len(b))))
			w.skip -= k
			b = b[k:]
			continue
		}
		k := copy(w.hdr[w.hn:], b)
		w.hn += k
		b = b[k:]
		if w.hn < 8 {
			return
		}
		w.hn = 0
		w.skip = int(binary.LittleEndian.Uint16(w.hdr[2:]))
		switch w.hdr[1] {
		case 1:
			atomic.AddInt64(&res.FINs, 1)
		case 3:
			atomic.AddInt64(&res.NOPs, 1)
		case 2:
			if int64(w.skip) > atomic.LoadInt64(&res.MaxFrame) {
				atomic.StoreInt64(&res.MaxFrame, int64(w.skip))
			}
		}
	}
}

func (w *wsPipe) Write(b []byte) (int, error) {
	if err := w.c.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Close sends a close frame and closes; in plain mode (no concurrent reader)
// it first waits up to 3 s for the server's close frame (ws_close_code).
func (w *wsPipe) Close() error {
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	w.c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	w.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	for !w.track {
		if _, err := w.Read(make([]byte, 4096)); err != nil {
			break
		}
	}
	return w.c.Close()
}

// dial upgrades one connection and checks the selected subprotocol.
func dial() (*websocket.Conn, error) {
	scheme := "ws"
	if *useTLS {
		scheme = "wss"
	}
	d := websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		TLSClientConfig:  &tls.Config{InsecureSkipVerify: true, ServerName: *sni},
		ReadBufferSize:   *wsbuf,
		WriteBufferSize:  *wsbuf,
	}
	if *proto != "none" {
		d.Subprotocols = strings.Split(*proto, ",")
	}
	h := http.Header{}
	if *host != "" {
		h.Set("Host", *host)
	}
	c, resp, err := d.Dial(scheme+"://"+*addr+*path, h)
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%v (HTTP %d)", err, resp.StatusCode)
		}
		return nil, fmt.Errorf("upgrade: %v", err)
	}
	sel := c.Subprotocol()
	res.SelectedProto = sel
	want := *expect
	if want == "auto" { // SPEC 4.2: smux_on, then smux_off, else none
		want = "none"
		for _, p := range []string{"smux_off", "smux_on"} {
			if strings.Contains(","+*proto+",", ","+p+",") {
				want = p
			}
		}
	}
	if want != "any" && sel != strings.TrimPrefix(want, "none") {
		return nil, fmt.Errorf("server selected subprotocol %q, expected %q", sel, want)
	}
	return c, nil
}

func runPlain(first *websocket.Conn) {
	res.Tunnel = "plain"
	conns := []*wsPipe{{c: first}}
	for i := 1; i < *streams && *mode == "echo"; i++ {
		c, err := dial()
		if err != nil {
			fail(err)
		}
		conns = append(conns, &wsPipe{c: c})
	}
	time.Sleep(*idle)
	xferStart = time.Now()
	switch *mode {
	case "echo":
		var wg sync.WaitGroup
		for i, p := range conns {
			wg.Add(1)
			go func(i int, p *wsPipe) { defer wg.Done(); record(echo(p, i, *nbytes, nil, nil)); p.Close() }(i, p)
		}
		wg.Wait()
	case "stall":
		stall(conns[0], 0)
		conns[0].Close()
	default:
		fail(fmt.Errorf("mode %q needs the mux tunnel", *mode))
	}
}

// badFrame sends a valid SYN and then hdr; the server must end the connection.
func badFrame(c *websocket.Conn, hdr []byte) {
	syn := []byte{1, 0, 0, 0, 1, 0, 0, 0}
	if err := c.WriteMessage(websocket.BinaryMessage, append(syn, hdr...)); err != nil {
		fail(err)
	}
	p := &wsPipe{c: c, track: true}
	for {
		if _, err := p.Read(make([]byte, 4096)); err != nil {
			return // the server ended it: what we want
		}
	}
}

func runMux(c *websocket.Conn) {
	res.Tunnel = "mux"
	switch *mode {
	case "badver":
		badFrame(c, []byte{2, 0, 0, 0, 3, 0, 0, 0})
		return
	case "badcmd":
		badFrame(c, []byte{1, byte(*badCmd), 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
		return
	}
	cfg := &smux.Config{Version: 1, KeepAliveInterval: 30 * time.Second, KeepAliveTimeout: 70 * time.Second,
		MaxFrameSize: 16384, MaxReceiveBuffer: 262144, MaxStreamBuffer: 65536}
	sess, err := smux.Client(&wsPipe{c: c, track: true}, cfg)
	if err != nil {
		fail(err)
	}
	if *mode == "retry" {
		xferStart = time.Now()
		retry(sess)
		sess.Close()
		return
	}
	var sts []*smux.Stream
	for i := 0; i < *streams; i++ { // opened in order: ids 3, 5, 7, ...
		st, err := sess.OpenStream()
		if err != nil {
			fail(fmt.Errorf("open stream %d: %v", i, err))
		}
		sts = append(sts, st)
	}
	time.Sleep(*idle)
	xferStart = time.Now()
	var readGate chan struct{} // echo, serverclose: readers start after -read-delay
	if *readDelay > 0 {
		readGate = make(chan struct{})
		time.AfterFunc(*readDelay, func() { close(readGate) })
	}
	if *mode == "push" {
		push(sess, sts[0])
		return
	}
	var wg sync.WaitGroup
	run := func(i int, f func()) { wg.Add(1); go func() { defer wg.Done(); f(); sts[i].Close() }() }
	for i := range sts {
		i := i
		switch {
		case i == 0 && *mode == "stall":
			run(i, func() { stall(sts[i], i) })
		case i == 0 && *mode == "halfclose":
			run(i, func() { // keep reading (Go v1 would stall the session), close mid-way
				go func() {
					_, err := verify(sts[i], i, *nbytes/2, nil) // ends at our Close
					if err != nil && strings.Contains(err.Error(), "differs") {
						setErr(fmt.Errorf("halfclose: %v", err))
					}
				}()
				if err := send(sts[i], i, *nbytes/2, nil); err != nil {
					setErr(fmt.Errorf("halfclose: %v", err))
				}
				atomic.AddInt64(&res.StreamsClosed, 1)
			})
		case *mode == "upload":
			run(i, func() {
				go io.Copy(io.Discard, sts[i]) // ends at our Close
				if err := send(sts[i], i, *nbytes, nil); err != nil {
					atomic.AddInt64(&res.StreamsFailed, 1)
					setErr(err)
					return
				}
				atomic.AddInt64(&res.StreamsOK, 1)
			})
		case *mode == "serverclose":
			run(i, func() {
				v, err := echo(sts[i], i, *nbytes, readGate, nil)
				if errors.Is(err, errRefused) || errors.Is(err, io.EOF) {
					atomic.AddInt64(&res.BytesVerified, v)
					atomic.AddInt64(&res.ServerClosed, 1)
					return
				}
				record(v, err)
			})
		default:
			run(i, func() { record(echo(sts[i], i, *nbytes, readGate, nil)) })
		}
	}
	if *mode == "refuse" { // one more than allowed: must see EOF and no data
		x, err := sess.OpenStream()
		if err != nil {
			fail(fmt.Errorf("open extra stream: %v", err))
		}
		x.Write(window(999, 0, *chunk)) // the server must drop it
		x.SetReadDeadline(time.Now().Add(*refuseWait))
		n, err := x.Read(make([]byte, 4096))
		if n == 0 && err == io.EOF {
			atomic.AddInt64(&res.StreamsRefused, 1)
		} else {
			setErr(fmt.Errorf("extra stream not refused: read %d bytes, err %v", n, err))
		}
		x.Close()
	}
	wg.Wait()
	if *mode == "upload" {
		fmt.Fprintln(os.Stderr, "uploaded")
		holdOn()
	}
	if *mode != "echo" && *mode != "stall" && *mode != "upload" { // the session must still work
		st, err := sess.OpenStream()
		if err != nil {
			fail(fmt.Errorf("open stream after %s: %v", *mode, err))
		}
		record(echo(st, *streams, *nbytes, nil, nil))
		st.Close()
	}
	sess.Close()
}

func main() {
	flag.Parse()
	if *chunk < 1 || *chunk > patLen || *streams < 1 || *nbytes < 1 {
		fmt.Fprintln(os.Stderr, "gopeer: need -chunk in 1..1048573, -streams >= 1, -bytes >= 1")
		os.Exit(2)
	}
	if !strings.Contains(" echo refuse halfclose upload serverclose retry stall push badver badcmd ", " "+*mode+" ") {
		fmt.Fprintf(os.Stderr, "gopeer: unknown -mode %q\n", *mode)
		os.Exit(2)
	}
	res.Mode = *mode
	initPattern(*seed)
	time.AfterFunc(*timeout, func() { fail(fmt.Errorf("timeout after %v", *timeout)) })
	c, err := dial()
	if err != nil {
		fail(err)
	}
	if c.Subprotocol() == "smux_on" || (c.Subprotocol() == "" && *defMux) {
		runMux(c)
	} else {
		runPlain(c)
	}
	finish()
}
