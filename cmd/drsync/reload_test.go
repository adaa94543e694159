package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drsync/drsync/agent"
	"github.com/drsync/drsync/internal/jsonfile"
	"github.com/drsync/drsync/testkit/hosttools"
)

// SIGHUP makes drsync send read its configuration again: a VM added there
// is replicated, a VM already there goes on counting its epochs, and a
// configuration that does not load is refused without stopping anything.
func TestSendReloadsOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	fpSender := keygen(t, keys, "site-a")
	fpReceiver := keygen(t, keys, "site-b")
	addr := startReceiver(t, dir, fpSender, "web-1", "web-2")
	rng := rand.New(rand.NewPCG(3, 5))
	for _, vm := range []string{"web-1", "web-2"} {
		writeFile(t, filepath.Join(dir, "images", vm+".raw"), guestImage(rng, 256<<10))
	}
	vmTable := func(vm string) string {
		return fmt.Sprintf(`
[[vm]]
name = %q
min_interval = "1s"
  [[vm.disk]]
  name = "vda"
  path = "images/%[1]s.raw"
  format = "raw"
`, vm)
	}
	head := fmt.Sprintf(`
[identity]
cert = "keys/site-a.crt"
key = "keys/site-a.key"
[receiver]
address = %q
fingerprints = [%q]
[state]
dir = "state"
`, addr.String(), fpReceiver)
	conf := filepath.Join(dir, "sender.toml")
	writeFile(t, conf, []byte(head+vmTable("web-1")))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logs hosttools.SyncBuffer
	done := make(chan int, 1)
	go func() {
		e := &env{stdout: &logs, stderr: &logs, now: time.Now}
		done <- runEnv(ctx, e, []string{"send", "--config", conf})
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != exitOK {
				t.Errorf("send exited with %d", code)
			}
		case <-time.After(20 * time.Second):
			t.Error("send did not stop")
		}
		if t.Failed() {
			t.Logf("sender log:\n%s", logs.String())
		}
	}()
	epochs := func(vm string) uint64 {
		var st agent.Status
		if err := jsonfile.Read(filepath.Join(dir, "state", vm, agent.StatusFile), &st); err != nil {
			return 0
		}
		return st.Epochs
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			select {
			case code := <-done:
				done <- code
				t.Fatalf("send exited with %d while waiting: %s", code, what)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("after 20 s: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The SIGHUP handler is installed before the first epoch.
	waitFor("web-1 committed no epoch", func() bool { return epochs("web-1") >= 1 })

	// A configuration that does not load: logged, and nothing stops.
	writeFile(t, conf, []byte(head+vmTable("web-1")+"[[vm]]\nname = \"bad name!\"\n"))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("the bad configuration was not refused", func() bool {
		return strings.Contains(logs.String(), "reload refused; still running with the previous configuration")
	})

	// web-2 added.
	before := epochs("web-1")
	writeFile(t, conf, []byte(head+vmTable("web-1")+vmTable("web-2")))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("web-2 committed no epoch", func() bool { return epochs("web-2") >= 1 })
	waitFor("web-1's epochs did not go on counting", func() bool { return epochs("web-1") >= before+1 })
	for _, want := range []string{"reload: vm web-2 added", "reload: configuration applied"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}
