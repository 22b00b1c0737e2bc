#!/usr/bin/env node
// The `ferry` command. Node's libuv pool serves every file read and write; its default of 4
// threads caps a disk server's queue depth, so widen it before anything touches the pool.
process.env.UV_THREADPOOL_SIZE ??= '16';
await import('../dist/src/bin/ferry.js');
