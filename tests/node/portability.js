// Reads a job on stdin and prints what Node's usearch and SQLite bindings find, keys as strings
// (they are 63-bit: beyond JavaScript's safe integers).
// Job: {index, settings: index.json's contents, store, vectors: [[float]], k, matches: [FTS5 query]}
const fs = require("fs");
const { Index } = require("usearch");
const { Database } = require("node-sqlite3-wasm");

const job = JSON.parse(fs.readFileSync(0, "utf8"));
const s = job.settings;
const index = new Index({
  dimensions: s.ndim, metric: s.metric, quantization: s.dtype, connectivity: s.connectivity,
  expansion_add: s.expansion_add, expansion_search: s.expansion_search,
});
index.view(job.index);
const dense = job.vectors.map((v) => Array.from(index.search(new Float32Array(v), job.k, 1).keys,
                                                (key) => key.toString()));
const db = new Database(job.store, { readOnly: true });
const keyword = job.matches.map((query) => db.all(
  "SELECT CAST(rowid AS TEXT) AS key FROM chunks_fts WHERE chunks_fts MATCH ? " +
  "ORDER BY bm25(chunks_fts), rowid LIMIT ?", [query, job.k]).map((row) => row.key));
db.close();
process.stdout.write(JSON.stringify({ size: Number(index.size()), dense, keyword }));
