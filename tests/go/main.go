// A workload using go-spiffe v2 (the reference Go SPIFFE library, on
// grpc-go) against a Signet agent. Driven by tests/clients_e2e.rs; prints
// one result line per command.
//
//	fetch SOCKET      X.509-SVID, key/certificate match, bundle
//	jwt SOCKET AUD    JWT-SVID fetched, validated by the agent and locally
//	                  against the fetched JWT bundles
//	error SOCKET      the error a refused caller gets
//	hbone SOCKET TUNNEL AUTHORITY SERVER_ID
//	                  an Istio HBONE client on Go's own HTTP/2 stack
//	                  (golang.org/x/net/http2): mTLS with the fetched SVID
//	                  to TUNNEL, ALPN h2, CONNECT AUTHORITY, a payload sent
//	                  and half-closed, the echo read to EOF; prints the
//	                  status and whether the echo came back intact
//	hbone-later SOCKET TUNNEL AUTHORITY SERVER_ID SECONDS
//	                  one CONNECT, then another on the same connection
//	                  SECONDS later (after the SVID fetched first may have
//	                  expired); prints both statuses
//	hbone-wait SOCKET TUNNEL AUTHORITY SERVER_ID
//	                  one CONNECT, its outcome printed; then another on
//	                  the same connection once a line arrives on stdin
//	                  (the test changes something in between)
//	get-wait SOCKET URL SERVER_ID
//	                  the same with GETs on an HTTP/2 mTLS connection to an
//	                  inbound proxy in HTTP mode, and a third GET half a
//	                  second later (on the same connection unless the proxy
//	                  sent a GOAWAY meanwhile; a failed dial is printed,
//	                  not fatal)
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/net/http2"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: spiffeclient fetch|jwt|error SOCKET [AUD]")
		os.Exit(2)
	}
	timeout := 20 * time.Second
	if os.Args[1] == "hbone-wait" || os.Args[1] == "get-wait" {
		// The test rotates CA keys in between.
		timeout = 120 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(os.Args[2]))
	if err != nil {
		fail(err)
	}
	defer client.Close()
	switch os.Args[1] {
	case "fetch":
		svid, err := client.FetchX509SVID(ctx)
		if err != nil {
			fail(err)
		}
		pub, err := x509.MarshalPKIXPublicKey(svid.PrivateKey.Public())
		if err != nil {
			fail(err)
		}
		leafPub, err := x509.MarshalPKIXPublicKey(svid.Certificates[0].PublicKey)
		if err != nil {
			fail(err)
		}
		bundles, err := client.FetchX509Bundles(ctx)
		if err != nil {
			fail(err)
		}
		b, err := bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
		if err != nil {
			fail(err)
		}
		fmt.Printf("svid=%s chain=%d key_matches=%t authorities=%d\n",
			svid.ID, len(svid.Certificates), string(pub) == string(leafPub), len(b.X509Authorities()))
	case "jwt":
		aud := os.Args[3]
		svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
		if err != nil {
			fail(err)
		}
		validated, err := client.ValidateJWTSVID(ctx, svid.Marshal(), aud)
		if err != nil {
			fail(err)
		}
		bundles, err := client.FetchJWTBundles(ctx)
		if err != nil {
			fail(err)
		}
		local, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{aud})
		if err != nil {
			fail(err)
		}
		_, refused := client.ValidateJWTSVID(ctx, svid.Marshal(), "not-"+aud)
		fmt.Printf("jwt sub=%s validated=%s local=%s wrong_audience_refused=%t\n",
			svid.ID, validated.ID, local.ID, refused != nil)
	case "hbone":
		transport := hboneTransport(ctx, client, os.Args[5])
		fmt.Println(hbone(ctx, transport, os.Args[3], os.Args[4]))
	case "hbone-later":
		transport := hboneTransport(ctx, client, os.Args[5])
		first := hbone(ctx, transport, os.Args[3], os.Args[4])
		wait, err := time.ParseDuration(os.Args[6] + "s")
		if err != nil {
			fail(err)
		}
		time.Sleep(wait)
		second := hbone(ctx, transport, os.Args[3], os.Args[4])
		fmt.Printf("first: %s; later: %s\n", first, second)
	case "hbone-wait":
		transport := hboneTransport(ctx, client, os.Args[5])
		fmt.Printf("first: %s\n", hbone(ctx, transport, os.Args[3], os.Args[4]))
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fail(err)
		}
		fmt.Printf("later: %s\n", hbone(ctx, transport, os.Args[3], os.Args[4]))
	case "get-wait":
		transport := hboneTransport(ctx, client, os.Args[4])
		fmt.Printf("first: %s\n", get(ctx, transport, os.Args[3]))
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			fail(err)
		}
		fmt.Printf("later: %s\n", get(ctx, transport, os.Args[3]))
		// Time for a GOAWAY sent after the answer to arrive.
		time.Sleep(500 * time.Millisecond)
		fmt.Printf("then: %s\n", get(ctx, transport, os.Args[3]))
	case "error":
		_, err := client.FetchX509SVID(ctx)
		fmt.Printf("error=%v\n", err)
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// hboneTransport makes an HTTP/2 transport with mTLS from the SVID the
// agent gives now (fetched once: the transport keeps its connection).
func hboneTransport(ctx context.Context, client *workloadapi.Client, serverID string) *http2.Transport {
	x509ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		fail(err)
	}
	id, err := spiffeid.FromString(serverID)
	if err != nil {
		fail(err)
	}
	conf := tlsconfig.MTLSClientConfig(x509ctx.DefaultSVID(), x509ctx.Bundles, tlsconfig.AuthorizeID(id))
	conf.NextProtos = []string{"h2"}
	return &http2.Transport{TLSClientConfig: conf}
}

// hbone sends one CONNECT to authority through the tunnel, a payload and a
// half-close, reads the echo to EOF and describes the outcome.
func hbone(ctx context.Context, transport *http2.Transport, tunnel, authority string) string {
	payload := bytes.Repeat([]byte("hbone from go "), 10000)
	body, w := io.Pipe()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+tunnel, body)
	if err != nil {
		fail(err)
	}
	// :authority names the target; the URL's host is where to dial.
	req.Host = authority
	resp, err := transport.RoundTrip(req)
	if err != nil {
		fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		w.Close()
		return fmt.Sprintf("status=%d error=%s", resp.StatusCode, resp.Header.Get("x-signet-error"))
	}
	go func() {
		w.Write(payload)
		// Half-close: END_STREAM; the echo still comes back.
		w.Close()
	}()
	echo, err := io.ReadAll(resp.Body)
	if err != nil {
		fail(err)
	}
	return fmt.Sprintf("status=%d echo_intact=%t bytes=%d", resp.StatusCode, bytes.Equal(echo, payload), len(echo))
}

// get sends one GET to url and describes the answer.
func get(ctx context.Context, transport *http2.Transport, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fail(err)
	}
	resp, err := transport.RoundTrip(req)
	if err != nil {
		return fmt.Sprintf("transport-error=%v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fail(err)
	}
	return fmt.Sprintf("status=%d error=%s bytes=%d", resp.StatusCode, resp.Header.Get("x-signet-error"), len(body))
}
