'use strict'
// Public links made by `veilfs serve`, opened by the real megajs 1.3.10 as a stranger would:
// for tests/server_links.rs.
//
// Reads on stdin: { gateway, email, password, folder, files: [{name, size, start, step}], single }
// The owner uploads `files` into a new folder and `single` into the root, links the file
// (`l`) and the folder (`s2` + `l`), and then a fresh, logged-out API object opens both links
// with File.fromURL (whose URLs name mega.nz; the API object's gateway decides where requests
// go) and downloads every file, megajs checking each MAC. Then the file link is removed and
// opening it again must fail. Prints one JSON object of observations.

const crypto = require('crypto')
const { Storage, File, API } = require('megajs')

function testBuffer (size, start, step) {
  const buf = Buffer.alloc(size)
  for (let i = 0; i < size; i++) buf[i] = (start + i * step) % 255
  return buf
}

const sha256 = buf => crypto.createHash('sha256').update(buf).digest('hex')

async function main () {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const out = {}
  const owner = await new Storage({ email: input.email, password: input.password, gateway: input.gateway }).ready

  const folder = await owner.root.mkdir(input.folder)
  for (const f of input.files) {
    await folder.upload({ name: f.name, size: f.size }, testBuffer(f.size, f.start, f.step)).complete
  }
  const s = input.single
  const single = await owner.root.upload({ name: s.name, size: s.size }, testBuffer(s.size, s.start, s.step)).complete

  out.fileLink = await single.link()
  out.fileLinkAgain = await single.link()
  out.folderLink = await folder.link()

  // A stranger: no account, no session.
  const stranger = new API(false, { gateway: input.gateway })

  const file = File.fromURL(out.fileLink, { api: stranger })
  await file.loadAttributes()
  const fileData = await file.downloadBuffer()
  out.file = { name: file.name, size: file.size, sha256: sha256(fileData) }

  const shared = File.fromURL(out.folderLink, { api: stranger })
  await shared.loadAttributes()
  out.folder = { name: shared.name, children: [] }
  for (const child of shared.children) {
    // megajs builds a folder's children with its global API object (the real MEGA), not the
    // folder's: point them at ours, as megajs's own tests do.
    child.api = stranger
    const data = await child.downloadBuffer()
    out.folder.children.push({ name: child.name, size: child.size, sha256: sha256(data) })
  }
  out.folder.children.sort((a, b) => a.name < b.name ? -1 : 1)

  // A reload shows the owner's links (`f` carries `ok` and `ph`).
  await owner.reload(true)
  const reloaded = owner.root.children.find(c => c.name === s.name)
  out.ownerSeesLink = !!reloaded.shared && reloaded.shareURL === out.fileLink

  // Removing the file link: the public handle no longer opens anything.
  await single.unshare()
  try {
    await File.fromURL(out.fileLink, { api: stranger }).loadAttributes()
    out.afterUnshare = 'still opens'
  } catch (e) {
    out.afterUnshare = String(e.message)
  }

  await owner.close()
  process.stdout.write(JSON.stringify(out))
  process.exit(0)
}

main().catch(err => {
  process.stderr.write(String(err && err.stack || err) + '\n')
  process.exit(1)
})
