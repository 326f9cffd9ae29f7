'use strict'
// Opens a public link made by `veilfs link` with the real megajs, as a stranger, and downloads
// what it points at (megajs checks each file's MAC): for tests/cli_links_megajs.rs.
//
// Reads on stdin: { gateway, link } where the link names mega.nz (megajs accepts no other host;
// the API object's gateway decides where requests go). Prints
// { files: [{path, size, sha256}] } sorted by path.

const crypto = require('crypto')
const { File, API } = require('megajs')

const sha256 = buf => crypto.createHash('sha256').update(buf).digest('hex')

async function walk (node, prefix, api, out) {
  for (const child of node.children || []) {
    // Children are built with megajs's global API object: point them at ours.
    child.api = api
    const path = prefix + '/' + child.name
    if (child.directory) {
      await walk(child, path, api, out)
    } else {
      const data = await child.downloadBuffer()
      out.push({ path, size: child.size, sha256: sha256(data) })
    }
  }
}

async function main () {
  const input = JSON.parse(require('fs').readFileSync(0, 'utf8'))
  const api = new API(false, { gateway: input.gateway })
  const node = File.fromURL(input.link, { api })
  await node.loadAttributes()
  const files = []
  if (node.directory) {
    await walk(node, node.name, api, files)
  } else {
    const data = await node.downloadBuffer()
    files.push({ path: node.name, size: node.size, sha256: sha256(data) })
  }
  files.sort((a, b) => a.path < b.path ? -1 : 1)
  process.stdout.write(JSON.stringify({ files }))
  process.exit(0)
}

main().catch(err => {
  process.stderr.write(String(err && err.stack || err) + '\n')
  process.exit(1)
})
