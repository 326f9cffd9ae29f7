'use strict'
// Transfer throughput of the real megajs 1.3.10 against a running `veilfs serve`, for
// scripts/bench/transfer.sh. Not part of the test suite.
//
//   node megajs_bench.js FILE...   with VEILFS_BENCH_SERVER, VEILFS_BENCH_EMAIL and
//                                  VEILFS_BENCH_PASSWORD in the environment
//
// For each file: uploads it (megajs encrypts and MACs), then downloads it (megajs decrypts and
// checks the MAC, failing the stream on a mismatch), each timed on its own with megajs's
// default settings. The file is read into memory before the upload clock starts, and the
// download is compared with it after the clock stops. Prints one line per file:
//   megajs <bytes> <upload seconds> <download seconds>

const fs = require('fs')
const path = require('path')
const { Storage } = require('megajs')

function download (file) {
  return new Promise((resolve, reject) => {
    const parts = []
    const stream = file.download()
    stream.on('data', chunk => parts.push(chunk))
    stream.on('error', reject)
    stream.on('end', () => resolve(Buffer.concat(parts)))
  })
}

async function main () {
  const env = name => {
    const value = process.env[name]
    if (!value) throw Error(name + ' is not set')
    return value
  }
  const storage = await new Storage({
    gateway: env('VEILFS_BENCH_SERVER'),
    email: env('VEILFS_BENCH_EMAIL'),
    password: env('VEILFS_BENCH_PASSWORD'),
    keepalive: false
  }).ready
  const folder = await storage.root.mkdir('megajs bench ' + Date.now())

  for (const file of process.argv.slice(2)) {
    const original = fs.readFileSync(file)
    // megajs encrypts the buffer it is given in place: hand it a copy.
    const input = Buffer.from(original)

    let start = process.hrtime.bigint()
    const node = await folder.upload({ name: path.basename(file), size: input.length }, input).complete
    const up = Number(process.hrtime.bigint() - start) / 1e9

    start = process.hrtime.bigint()
    const got = await download(node)
    const down = Number(process.hrtime.bigint() - start) / 1e9

    if (Buffer.compare(got, original) !== 0) throw Error('downloaded content differs from ' + file)
    console.log(`megajs ${original.length} ${up.toFixed(4)} ${down.toFixed(4)}`)
  }
  await storage.close()
  process.exit(0)
}

main().catch(err => {
  process.stderr.write(String((err && err.stack) || err) + '\n')
  process.exit(1)
})
