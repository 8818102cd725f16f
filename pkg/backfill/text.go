package backfill

// ReadAsText makes the job read every column as text, giving up the binary
// path: a chunk's rows are then whole in Rows, for consumers other than
// the new database (the JetStream sink publishes them).
func (j *Job) ReadAsText() {
	j.binary, j.textSrc, j.rowKeyIdx = false, nil, j.keyIdx
}
