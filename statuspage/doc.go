// Package statuspage serves a read-only HTML page of the VMs a sender or a
// receiver replicates, for an operator to look at: per VM the committed
// epoch, its cut, the RPO lag against its target with a chart of the lag
// over the last hours, the last guest pause, goodput, retained recovery
// points and the last failover drill, and a banner for each VM in trouble.
//
// It knows nothing of how epochs are made: a Source hands it a Page at
// each request, and the Handler keeps a bounded history of lag samples per
// VM (a Ring) to draw the charts. The page is self-contained (inline CSS
// and SVG, no script, no external asset), so it works on a DR site cut off
// from the internet; its Content-Security-Policy forbids loading anything.
//
// The clock is passed in, for tests.
package statuspage
