package overlay

// The differential test harness. The real Linux overlayfs is the oracle:
// every kernel test builds the same lower layers twice, in kernel format
// for a real overlay mount and in OCI format for the library, applies the
// same operations to both, and compares every result (errno and data) and
// the whole merged tree after every operation.
//
//	main_test.go     TestMain (umask 0)
//	layers_test.go   declarative layer specs and their three builds
//	ops_test.go      the operation vocabulary and its byte encoding
//	tree_test.go     checkSameTree and its own tests
//	lockstep_test.go the kernel mount, the overlay builder and the lockstep runner
//	kernel_test.go   TestKernelScenarios and TestKernelRandom
//	fuzz_test.go     FuzzOps, its seed corpus and TestOracleAgreesWithFlatDir
//
// The kernel tests need root and overlayfs. Where the mount fails they fail,
// unless OVERLAY_NO_KERNEL=1, which turns them into loud skips. Typical runs:
//
//	go test ./...                                   # everything, seeds included
//	go test -run 'Oracle|CheckSameTree' ./...       # the harness alone, no library needed
//	go test -run TestKernelRandom -rapid.checks=1000 ./...
//	go test -run XXX -fuzz FuzzOps -fuzztime 5m ./...
//	OVERLAY_WRITE_CORPUS=1 go test -run TestFuzzCorpus ./...  # after changing seeds

import (
	"os"
	"syscall"
	"testing"
)

// TestMain runs the package's tests with a umask of zero. The overlay applies
// no umask, so the kernel oracle must not apply one either for the modes that
// both sides report to agree.
func TestMain(m *testing.M) {
	syscall.Umask(0)
	os.Exit(m.Run())
}
