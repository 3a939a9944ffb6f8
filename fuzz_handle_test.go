package overlay

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/spf13/afero"
)

// fuzzHandleFlags are the flags FuzzFileHandle opens its file with.
var fuzzHandleFlags = []int{
	os.O_RDONLY,
	os.O_RDWR,
	os.O_WRONLY,
	os.O_WRONLY | os.O_APPEND,
	os.O_RDWR | os.O_APPEND,
	os.O_RDWR | os.O_TRUNC,
}

// FuzzFileHandle opens a file of a MemMapFs lower, through an overlay with
// a MemMapFs upper, and the same file on the host with os.OpenFile, and
// makes the same calls on both handles: reads, writes, seeks and truncates
// at any offset, of any size, with any whence. MemMapFs's own handles
// differ from Linux's in many of them; the overlay's must not. Every
// result, and the file's content at the end, must agree.
func FuzzFileHandle(f *testing.F) {
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) == 0 {
			return
		}
		flag := fuzzHandleFlags[int(script[0])%len(fuzzHandleFlags)]
		const content = "0123456789"
		lower := afero.NewMemMapFs()
		if err := afero.WriteFile(lower, "/f", []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		o, err := New(afero.NewMemMapFs(), []afero.Fs{lower})
		if err != nil {
			t.Fatal(err)
		}
		host := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(host, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		want, err := os.OpenFile(host, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer want.Close()
		got, err := o.OpenFile("f", flag, 0)
		if err != nil {
			t.Fatalf("OpenFile(%#o): %v", flag, err)
		}
		defer got.Close()
		script = script[1:]
		for i := 0; i+3 <= len(script) && i < 3*64; i += 3 {
			call, a, b := script[i], script[i+1], script[i+2]
			what, w := fuzzHandleCall(want, call, a, b, osErrno)
			_, g := fuzzHandleCall(got, call, a, b, errnoName)
			if w != g {
				t.Fatalf("open %#o, call %d %s: os.File %s, overlay %s", flag, i/3, what, w, g)
			}
		}
		wantData, err := os.ReadFile(host)
		if err != nil {
			t.Fatal(err)
		}
		if g := readString(o, "f"); g != string(wantData) {
			t.Fatalf("open %#o: content %q, want %q", flag, g, wantData)
		}
	})
}

// fuzzHandleCall makes one call on f, chosen by call, with operands from a
// and b (offsets from -8 to 55, sizes up to 63), and describes the call
// and its result, naming an error with errName.
func fuzzHandleCall(f afero.File, call, a, b byte, errName func(error) string) (what, result string) {
	off := int64(a%64) - 8
	size := int(b % 64)
	switch call % 6 {
	case 0:
		buf := make([]byte, size)
		n, err := f.Read(buf)
		return fmt.Sprintf("Read(%d)", size), fmt.Sprintf("%q %s", buf[:n], errName(err))
	case 1:
		buf := make([]byte, size)
		n, err := f.ReadAt(buf, off)
		return fmt.Sprintf("ReadAt(%d, %d)", size, off), fmt.Sprintf("%q %s", buf[:n], errName(err))
	case 2:
		n, err := f.Write([]byte("abcdefghij")[:size%11])
		return fmt.Sprintf("Write(%d bytes)", size%11), fmt.Sprintf("%d %s", n, errName(err))
	case 3:
		n, err := f.WriteAt([]byte("ABCDEFGHIJ")[:size%11], off)
		return fmt.Sprintf("WriteAt(%d bytes, %d)", size%11, off), fmt.Sprintf("%d %s", n, errName(err))
	case 4:
		// Not SEEK_DATA or SEEK_HOLE: where the host file has holes is the
		// host file system's choice, and MemMapFs has none.
		whence := []int{io.SeekStart, io.SeekCurrent, io.SeekEnd, 5}[b%4] // 5 is no whence at all
		n, err := f.Seek(off, whence)
		if err != nil {
			n = 0 // the offset returned with an error means nothing
		}
		return fmt.Sprintf("Seek(%d, %d)", off, whence), fmt.Sprintf("%d %s", n, errName(err))
	}
	err := f.Truncate(off)
	return fmt.Sprintf("Truncate(%d)", off), errName(err)
}

// osErrno is errnoName for *os.File, whose errors for what it refuses
// without asking the kernel (a negative offset, WriteAt on an O_APPEND
// handle) carry no errno: they are EINVAL, as the overlay reports them.
func osErrno(err error) string {
	var errno syscall.Errno
	if err != nil && err != io.EOF && !errors.As(err, &errno) {
		return errnoName(syscall.EINVAL)
	}
	return errnoName(err)
}
