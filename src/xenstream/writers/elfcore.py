"""Writers of the two core-file layouts ``extract-memory`` produces, once the
page data is in place in the file: an ELF64 core (:func:`finish_elf`) and
Xen's dump-core (:func:`finish_xen_core`), plus the pieces they are made of
(notes, the x86-64 ``elf_prstatus``, headers).

Both layouts keep the page data where the extraction put it and write the
metadata *after* it (the ELF header, written last at offset 0, says where):

* ELF: pages at ``base + pfn * 4096``; then the program headers (PT_NOTE,
  then one PT_LOAD per run of consecutive pfns, ``p_paddr = p_vaddr =
  pfn * 4096``), the notes, and, past 65534 program headers, the one section
  header of extended numbering (PN_XNUM).
* xen-core: ``.xen_pages`` (dense, ascending pfns) from ``pages_offset``;
  then ``.xen_pfn`` or ``.xen_p2m``, ``.note.Xen``, ``.xen_prstatus``,
  ``.xen_shared_info``, ``.shstrtab`` and the section headers, in the order
  of Xen's ``xc_domain_dumpcore_via_callback()`` (null, ``.shstrtab``,
  ``.note.Xen``, ``.xen_prstatus``, [``.xen_shared_info``], ``.xen_pages``,
  ``.xen_p2m``/``.xen_pfn``).  Xen puts the section headers first; readers
  follow ``e_shoff`` (the format says: "Analysis tools shouldn't depend on
  the order of sections").

Everything is written with ``pwrite`` in bounded pieces: the pfn table of a
1 TiB guest (2 GiB) never sits in memory.
"""

from __future__ import annotations

import array
import os
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from xenstream.formats import elf, xencore
from xenstream.formats.elf import EHDR, NHDR, PHDR, SHDR
from xenstream.layout import Layout

PAGE = 4096
#: program headers beyond this use extended numbering (PN_XNUM); a module
#: constant so that a test can reach that path with a few runs
PHNUM_MAX = elf.PN_XNUM - 1
#: entries of the pfn table (or program headers) built per write
_BATCH = 1 << 16

Runs = Callable[[], Iterable[Tuple[int, int]]]  # the runs (start, end) of pfns, ascending


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _pack(layout: Layout, **values: Union[int, bytes]) -> bytes:
    """``layout`` packed little-endian, the fields not given zero."""
    return layout.pack("<", **{**dict.fromkeys(layout.names, 0), **values})


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note: header, name (NUL-terminated) and descriptor, each
    padded to 4 bytes."""
    n = name + b"\0"
    pad = elf.NOTE_ALIGN
    return (_pack(NHDR, n_namesz=len(n), n_descsz=len(desc), n_type=ntype)
            + n + bytes(-len(n) % pad) + desc + bytes(-len(desc) % pad))


def prstatus(pid: int, gregs: Sequence[int]) -> bytes:
    """The x86-64 ``elf_prstatus`` descriptor of one vcpu: ``gregs`` in the
    ``elf_gregset_t`` order (:data:`xenstream.formats.elf.GREGS_X86_64`)."""
    if len(gregs) != len(elf.GREGS_X86_64):
        raise ValueError(f"expected {len(elf.GREGS_X86_64)} registers, found {len(gregs)}")
    regs = {f"pr_reg_{name}": v & (1 << 64) - 1 for name, v in zip(elf.GREGS_X86_64, gregs)}
    return _pack(elf.PRSTATUS_X86_64, pr_pid=pid, **regs)


def elf_header(*, machine: int, phoff: int = 0, phnum: int = 0, shoff: int = 0,
               shnum: int = 0, shstrndx: int = 0) -> bytes:
    return _pack(EHDR, e_ident=elf.IDENT, e_type=elf.ET_CORE, e_machine=machine,
                     e_version=elf.EV_CURRENT, e_phoff=phoff, e_shoff=shoff,
                     e_ehsize=EHDR.size, e_phentsize=PHDR.size if phnum else 0,
                     e_phnum=phnum, e_shentsize=SHDR.size if shnum else 0, e_shnum=shnum,
                     e_shstrndx=shstrndx)


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return offset + done


def _batched(items: Iterable[bytes]) -> Iterator[bytes]:
    """Join small pieces into writes of about 1 MiB."""
    buf: List[bytes] = []
    size = 0
    for b in items:
        buf.append(b)
        size += len(b)
        if size >= 1 << 20:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


# -- ELF core -------------------------------------------------------------------------


def finish_elf(fd: int, *, base: int, data_end: int, runs: Runs, nruns: int,
               notes: bytes, machine: int = elf.EM_X86_64) -> int:
    """Write the program headers and ``notes`` at ``data_end`` (past the page
    data, which is at ``base + pfn * 4096``), then the ELF header; returns the
    file size."""
    phnum = 1 + nruns
    phoff = _align(data_end, 8)
    notes_off = phoff + PHDR.size * phnum
    head = _pack(PHDR, p_type=elf.PT_NOTE, p_flags=elf.PF_R, p_offset=notes_off,
                     p_filesz=len(notes), p_align=elf.NOTE_ALIGN)

    def phdrs() -> Iterator[bytes]:
        yield head
        for start, end in runs():
            size = (end - start) * PAGE
            yield _pack(PHDR, p_type=elf.PT_LOAD, p_flags=elf.PF_R | elf.PF_W | elf.PF_X,
                            p_offset=base + start * PAGE, p_vaddr=start * PAGE,
                            p_paddr=start * PAGE, p_filesz=size, p_memsz=size, p_align=PAGE)

    at = phoff
    for piece in _batched(phdrs()):
        at = _pwrite_all(fd, piece, at)
    assert at == notes_off
    end = _pwrite_all(fd, notes, notes_off)
    if phnum > PHNUM_MAX:
        # extended numbering: section header 0 holds the count (as Linux writes it)
        shoff = _align(end, 8)
        end = _pwrite_all(fd, _pack(SHDR, sh_type=elf.SHT_NULL, sh_size=1, sh_info=phnum), shoff)
        hdr = elf_header(machine=machine, phoff=phoff, phnum=elf.PN_XNUM, shoff=shoff, shnum=1)
    else:
        hdr = elf_header(machine=machine, phoff=phoff, phnum=phnum)
    _pwrite_all(fd, hdr, 0)
    return end


# -- Xen dump-core --------------------------------------------------------------------


def xen_notes(*, hvm: bool, nr_vcpus: int, nr_pages: int, xen_major: int = 0,
              xen_minor: int = 0) -> bytes:
    """The four notes of ``.note.Xen``: none, header, xen version, format version."""
    name = xencore.NOTE_NAME
    header = _pack(xencore.HEADER_DESC,
                   xch_magic=xencore.XC_CORE_MAGIC_HVM if hvm else xencore.XC_CORE_MAGIC,
                   xch_nr_vcpus=nr_vcpus, xch_nr_pages=nr_pages, xch_page_size=PAGE)
    # what the image cannot tell (build, capabilities) stays empty, as the zeroed struct
    version = _pack(xencore.XEN_VERSION_DESC, major_version=xen_major,
                    minor_version=xen_minor, extra_version=b"", compiler=b"", compile_by=b"",
                    compile_domain=b"", compile_date=b"", capabilities=b"", changeset=b"",
                    pagesize=PAGE)
    return b"".join([
        note(name, xencore.NOTE_NONE, b""),
        note(name, xencore.NOTE_HEADER, header),
        note(name, xencore.NOTE_XEN_VERSION, version),
        note(name, xencore.NOTE_FORMAT_VERSION,
             _pack(xencore.FORMAT_VERSION_DESC, version=xencore.FORMAT_VERSION)),
    ])


class _StrTab:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.index: Dict[str, int] = {}

    def add(self, name: str) -> int:
        if name not in self.index:
            self.index[name] = len(self.data)
            self.data += name.encode() + b"\0"
        return self.index[name]


def _pfn_table(runs: Runs, p2m: bool) -> Iterator[bytes]:
    """``.xen_pfn`` (u64 pfn per page) or ``.xen_p2m`` ({pfn, gmfn = pfn} per
    page) for the pages in ascending order, in bounded pieces."""
    for start, end in runs():
        for a in range(start, end, _BATCH):
            b = min(end, a + _BATCH)
            if p2m:
                words = array.array("Q", bytes(16 * (b - a)))
                words[0::2] = array.array("Q", range(a, b))
                words[1::2] = words[0::2]
            else:
                words = array.array("Q", range(a, b))
            yield words.tobytes()


def finish_xen_core(fd: int, *, pages_offset: int, nr_pages: int, runs: Runs, hvm: bool,
                    prstatus_contexts: Sequence[bytes], shared_info: Optional[bytes],
                    machine: int, xen_major: int = 0, xen_minor: int = 0) -> int:
    """Write everything after ``.xen_pages`` (``nr_pages`` pages from
    ``pages_offset``, in the ascending order of ``runs``), then the ELF
    header; returns the file size."""
    p2m = not hvm
    entry = xencore.P2M_ENTRY.size if p2m else 8
    strtab = _StrTab()
    # the names in the order of the section headers, as Xen's writer adds
    # them: Volatility 3 takes a name's position in .shstrtab for its index
    name = strtab.add(elf.SHSTRTAB)
    at = pages_offset + nr_pages * PAGE
    table_off = at
    for piece in _batched(_pfn_table(runs, p2m)):
        at = _pwrite_all(fd, piece, at)
    assert at == table_off + entry * nr_pages
    notes = xen_notes(hvm=hvm, nr_vcpus=len(prstatus_contexts), nr_pages=nr_pages,
                      xen_major=xen_major, xen_minor=xen_minor)
    notes_off = _align(at, 8)
    at = _pwrite_all(fd, notes, notes_off)
    size = xencore.VCPU_CONTEXT_ANY_SIZE
    ctxs = b"".join(c.ljust(size, b"\0")[:size] for c in prstatus_contexts)
    prs_off = _align(at, 8)
    at = _pwrite_all(fd, ctxs, prs_off)
    shinfo_off = _align(at, 8)
    if shared_info is not None:
        at = _pwrite_all(fd, shared_info, shinfo_off)

    def sh(name: str, stype: int, offset: int, length: int, align: int, entsize: int) -> bytes:
        return _pack(SHDR, sh_name=strtab.add(name), sh_type=stype, sh_offset=offset,
                         sh_size=length, sh_addralign=align, sh_entsize=entsize)

    null = _pack(SHDR)
    # the string table's own header comes second (Xen's order), its offset is known last
    shdrs = [sh(xencore.SEC_NOTE, elf.SHT_NOTE, notes_off, len(notes), 0, 0),
             sh(xencore.SEC_PRSTATUS, elf.SHT_PROGBITS, prs_off, len(ctxs), 8, size)]
    if shared_info is not None:
        shdrs.append(sh(xencore.SEC_SHARED_INFO, elf.SHT_PROGBITS, shinfo_off, len(shared_info),
                        8, PAGE))
    shdrs.append(sh(xencore.SEC_PAGES, elf.SHT_PROGBITS, pages_offset, nr_pages * PAGE, PAGE,
                    PAGE))
    shdrs.append(sh(xencore.SEC_P2M if p2m else xencore.SEC_PFN, elf.SHT_PROGBITS, table_off,
                    entry * nr_pages, 8, entry))
    str_off = at
    at = _pwrite_all(fd, bytes(strtab.data), str_off)
    strtab_hdr = _pack(SHDR, sh_name=name, sh_type=elf.SHT_STRTAB, sh_offset=str_off,
                           sh_size=len(strtab.data))
    shoff = _align(at, 8)
    table = [null, strtab_hdr] + shdrs
    end = _pwrite_all(fd, b"".join(table), shoff)
    _pwrite_all(fd, elf_header(machine=machine, shoff=shoff, shnum=len(table), shstrndx=1), 0)
    return end
