'use strict'
// Drives the real megajs 1.3.10 against a running `veilfs serve` for tests/server_megajs.rs.
//
// Reads on stdin: { gateway, email, password, folder, files: [{name, size, start, step}],
//                   rename: {from, to}, move, remove }
// Two sessions log into the same account: A makes every change, B only watches its action
// packets (`sc` + wait URL) and must end up with the same tree. Prints one JSON object with what
// each step observed; the Rust side asserts on it.
//
// File content follows megajs's own test rule (byte i = (start + i * step) % 255), so the Rust
// side can check sizes and search the server's disk for plaintext without megabytes on stdin.

const crypto = require('crypto')
const { Storage } = require('megajs')

function testBuffer (size, start, step) {
  const buf = Buffer.alloc(size)
  for (let i = 0; i < size; i++) buf[i] = (start + i * step) % 255
  return buf
}

function sha256 (buf) {
  return crypto.createHash('sha256').update(buf).digest('hex')
}

async function waitFor (what, predicate, ms = 15000) {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw Error('timed out waiting for ' + what)
    await new Promise(resolve => setTimeout(resolve, 25))
  }
}

function childNames (folder) {
  return (folder.children || []).map(f => f.name).sort()
}

function findIn (folder, name) {
  return (folder.children || []).find(f => f.name === name)
}

async function main () {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const opts = { email: input.email, password: input.password, gateway: input.gateway, keepalive: true }
  const out = {}

  // Capture every HTTP exchange of session A, to report what megajs sent and got.
  const seen = []
  const fetchA = async (url, init) => {
    const resp = await globalThis.fetch(url, init)
    seen.push({ url: String(url), status: resp.status })
    return resp
  }

  const a = await new Storage({ ...opts, fetch: fetchA }).ready
  const b = await new Storage({ ...opts }).ready
  out.user = a.user
  out.sameUser = a.user === b.user
  out.rootsA = [a.root && a.root.name, a.trash && a.trash.name, a.inbox && a.inbox.name]

  const folder = await a.root.mkdir(input.folder)
  out.folderName = folder.name

  out.uploads = []
  for (const f of input.files) {
    const data = testBuffer(f.size, f.start, f.step)
    // megajs encrypts the buffer it is given in place: hand it a copy.
    const file = await folder.upload({ name: f.name, size: f.size }, Buffer.from(data)).complete
    out.uploads.push({ name: file.name, size: file.size, handle: file.nodeId })
  }
  out.listA = childNames(folder).map(name => ({ name, size: findIn(folder, name).size }))

  out.downloads = []
  for (const f of input.files) {
    const file = findIn(folder, f.name)
    const got = await file.downloadBuffer()
    const want = testBuffer(f.size, f.start, f.step)
    out.downloads.push({ name: f.name, ok: Buffer.compare(got, want) === 0, sha256: sha256(got), size: got.length })
  }

  // Session B learns about the folder and every file through action packets alone.
  const allNames = input.files.map(f => f.name).sort()
  await waitFor('B to see the uploads', () => {
    const fb = findIn(b.root, input.folder)
    return fb && childNames(fb).join('\n') === allNames.join('\n')
  })
  const folderB = findIn(b.root, input.folder)
  out.listB = childNames(folderB)
  // B decrypts and MAC-checks a file it only knows from an `sc` packet.
  {
    const f = input.files[input.files.length - 1]
    const got = await findIn(folderB, f.name).downloadBuffer()
    out.downloadB = Buffer.compare(got, testBuffer(f.size, f.start, f.step)) === 0
  }

  // Rename.
  await findIn(folder, input.rename.from).rename(input.rename.to)
  await waitFor('B to see the rename', () => !!findIn(folderB, input.rename.to))
  out.afterRenameB = childNames(folderB)

  // Move into the root. megajs updates even its own tree only from the packets.
  const moving = findIn(folder, input.move)
  await moving.moveTo(a.root)
  await waitFor('A to see the move', () => !!findIn(a.root, input.move))
  await waitFor('B to see the move', () => !!findIn(b.root, input.move) && !findIn(folderB, input.move))
  out.movedParentA = moving.parent && moving.parent.nodeId === a.root.nodeId

  // Permanent delete.
  await findIn(folder, input.remove).delete(true)
  await waitFor('A to see the delete', () => !findIn(folder, input.remove))
  await waitFor('B to see the delete', () => !findIn(folderB, input.remove))
  out.finalA = childNames(folder)
  out.finalB = childNames(folderB)
  out.rootB = childNames(b.root)

  // Moving a folder into itself must fail (ECIRCULAR), and the tree stay as it was.
  const sub = await folder.mkdir('sub')
  try {
    await folder.moveTo(sub)
    out.circular = 'accepted'
  } catch (e) {
    out.circular = String(e.message)
  }

  const info = await a.getAccountInfo()
  out.spaceUsed = info.spaceUsed
  out.spaceTotal = info.spaceTotal

  out.requests = seen.map(s => ({ path: new URL(s.url).pathname.split('/')[1], status: s.status }))
  await a.close()
  await b.close()
  // Aborted long polls may leave sockets in the agent's pool; nothing else is pending.
  process.stdout.write(JSON.stringify(out))
  process.exit(0)
}

main().catch(err => {
  process.stderr.write(String(err && err.stack || err) + '\n')
  process.exit(1)
})
