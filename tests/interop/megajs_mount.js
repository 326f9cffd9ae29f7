'use strict'
// The real megajs 1.3.10 as the other client of an account that veilfs mounts, for
// tests/mount_megajs.rs. One fresh session per run, so what it sees is the server's tree.
//
// argv[2] is the action; stdin holds { gateway, email, password, folder, files }:
// - upload: makes `folder` in the root and uploads each {name, size, start, step} into it, with
//   byte i = (start + i * step) % 255 (megajs's test rule; the Rust side builds the same bytes);
// - download: downloads every file in `folder` with megajs's MAC check, reporting per name its
//   size and sha256, or the error megajs threw;
// - list: the names in `folder`, one entry per node (duplicates show as repeated names).
// Prints one JSON object.

const crypto = require('crypto')
const { Storage } = require('megajs')

function testBuffer (size, start, step) {
  const buf = Buffer.alloc(size)
  for (let i = 0; i < size; i++) buf[i] = (start + i * step) % 255
  return buf
}

function findIn (folder, name) {
  return (folder.children || []).find(f => f.name === name)
}

async function main () {
  const action = process.argv[2]
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const storage = await new Storage({
    email: input.email,
    password: input.password,
    gateway: input.gateway
  }).ready
  const out = {}

  if (action === 'upload') {
    const folder = await storage.root.mkdir(input.folder)
    out.uploaded = []
    for (const f of input.files) {
      // megajs encrypts the buffer it is given in place, and the copy is the one it keeps.
      const data = testBuffer(f.size, f.start, f.step)
      const file = await folder.upload({ name: f.name, size: f.size }, data).complete
      out.uploaded.push({ name: file.name, size: file.size })
    }
  } else {
    const folder = findIn(storage.root, input.folder)
    if (!folder) throw Error('no folder ' + input.folder)
    const children = folder.children || []
    if (action === 'list') {
      out.names = children.map(f => f.name).sort()
    } else if (action === 'download') {
      out.files = {}
      for (const file of children) {
        if (file.directory) continue
        try {
          const got = await file.downloadBuffer()
          out.files[file.name] = {
            size: got.length,
            sha256: crypto.createHash('sha256').update(got).digest('hex')
          }
        } catch (e) {
          out.files[file.name] = { error: String(e && e.message || e) }
        }
      }
    } else {
      throw Error('unknown action ' + action)
    }
  }
  await storage.close()
  process.stdout.write(JSON.stringify(out))
  process.exit(0)
}

main().catch(err => {
  process.stderr.write(String(err && err.stack || err) + '\n')
  process.exit(1)
})
