module github.com/stackfs/overlay

go 1.26.8

require (
	github.com/spf13/afero v1.15.0
	golang.org/x/sync v0.25.0
	golang.org/x/sys v0.50.0
)

require (
	golang.org/x/text v0.28.0 // indirect
	pgregory.net/rapid v1.3.0 // indirect
)
