package dirtylog

// Kernel ABI the Debian 12 headers (and x/sys/unix) lack: userfaultfd's
// write-protect-async mode (Linux 6.7) and PAGEMAP_SCAN (Linux 6.7).

const pageSize = 4096

const (
	uffdAPI = 0xAA

	uffdioAPI      = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	uffdioRegister = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)

	uffdRegisterModeMissing = 1 << 0
	uffdRegisterModeWP      = 1 << 1

	uffdFeatureWPHugetlbfsShmem = 1 << 12
	uffdFeatureWPUnpopulated    = 1 << 13
	uffdFeatureWPAsync          = 1 << 15

	// uffdFeatures: writes resolve at once in the kernel (no handler
	// thread, no stall), clearing the page's write-protect bit, which
	// PAGEMAP_SCAN reports; unpopulated pages of the shmem-backed memfd are
	// protected too, so a page the guest touches for the first time is
	// reported.
	uffdFeatures = uffdFeatureWPAsync | uffdFeatureWPUnpopulated | uffdFeatureWPHugetlbfsShmem
)

// uffdSpec is what an injected userfaultfd registers: mode, features
// UFFDIO_API must grant, the ioctls UFFDIO_REGISTER must offer, and
// whether the tracked process keeps its own copy of the descriptor (Keep).
type uffdSpec struct {
	Mode, Features, Ioctls uint64
	Keep                   bool
	What                   string // for messages
}

var wpSpec = uffdSpec{Mode: uffdRegisterModeWP, Features: uffdFeatures, What: "write-protect-async"}

// uffdioAPIArg is struct uffdio_api.
type uffdioAPIArg struct {
	API, Features, Ioctls uint64
}

// uffdioRegisterArg is struct uffdio_register.
type uffdioRegisterArg struct {
	Start, Len, Mode, Ioctls uint64
}

const (
	pagemapScan = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)

	pmScanWPMatching   = 1 << 0
	pmScanCheckWPAsync = 1 << 1

	pageIsWritten = 1 << 1
)

// pageRegion is struct page_region.
type pageRegion struct {
	Start, End, Categories uint64
}

// pmScanArg is struct pm_scan_arg.
type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages       uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask uint64
}
