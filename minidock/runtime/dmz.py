"""The last exec goes through a trampoline, so that no container process runs the host's
python (CVE-2019-5736; runc's ``runc-dmz``, ``libcontainer/dmz``).

Until it execs, a container's first process (or an ``exec``'d one) is the runtime: the
host's python. It is non-dumpable, so a process in the container can't open its
``/proc/<pid>/exe``. But execve(2) makes a process dumpable again, and the *container*
chooses what is exec'd: if its ``/bin/sh`` is a script starting ``#!/proc/self/exe``, the
kernel looks that interpreter up in the process doing the exec — still the host's python —
and runs it again, now dumpable, inside the container. The container opens
``/proc/<pid>/exe`` of that process (O_PATH), waits for the host's python to stop running
anywhere (until then writes fail with ETXTBSY) and reopens it for writing through
``/proc/self/fd/N``: the next ``minidock`` anyone runs on the host runs its code, as root.

So the runtime's process never execs the program itself. It execs this trampoline from a
sealed memfd (a file in memory that can never be written again), and the trampoline execs
the program. A ``#!/proc/self/exe`` then finds only the trampoline: 400 bytes of machine
code, in memory, that nobody can modify — nothing of the host.

The trampoline is a complete static x86_64 ELF program, assembled below from its listing:
``trampoline PATH ARGV0 ARGV1 …`` calls ``execve(PATH, [ARGV0, ARGV1, …], envp)``; if that
fails it writes ``minidock: exec PATH: errno N`` to stderr and exits 127 for ENOENT, else
126 (Docker's codes). Everything else of the process — uid, capabilities, no_new_privs,
seccomp filter, cwd, descriptors — is the kernel's and passes through both execs unchanged,
with one difference runc also met: a capability a non-root user holds only in its
effective set (not ambient) is gone by the second exec, so it no longer helps to open the
program file itself.
"""

from __future__ import annotations

import struct

from minidock import syscalls

#: The machine code, instruction by instruction (GNU as, Intel syntax, then objdump -d).
_CODE = bytes.fromhex(
    "488b0c24"  #           mov  rcx, [rsp]            ; argc
    "4883f902"  #           cmp  rcx, 2
    "0f82bb000000"  #       jb   usage                 ; needs PATH and ARGV0
    "4c8b642408"  #         mov  r12, [rsp+8]          ; r12 = PATH = argv[0]
    "4c89e7"  #             mov  rdi, r12
    "488d742410"  #         lea  rsi, [rsp+16]         ; argv = &argv[1]
    "488d54cc10"  #         lea  rdx, [rsp+rcx*8+16]   ; envp = &argv[argc + 1]
    "b83b000000"  #         mov  eax, 59               ; execve(PATH, argv, envp)
    "0f05"  #               syscall                    ; back here only if it failed
    "f7d8"  #               neg  eax
    "89c3"  #               mov  ebx, eax              ; ebx = errno
    "488d359e000000"  #     lea  rsi, [rip+prefix]     ; "minidock: exec "
    "ba0f000000"  #         mov  edx, 15
    "bf02000000b8010000000f05"  # write(2, rsi, rdx)
    "4c89e7"  #             mov  rdi, r12              ; PATH, up to its NUL:
    "31c0"  #               xor  eax, eax
    "48c7c1ffffffff"  #     mov  rcx, -1
    "f2ae"  #               repnz scasb
    "488d57ff"  #           lea  rdx, [rdi-1]
    "4c89e6"  #             mov  rsi, r12
    "4829f2"  #             sub  rdx, rsi
    "bf02000000b8010000000f05"  # write(2, rsi, rdx)
    "488d3571000000"  #     lea  rsi, [rip+middle]     ; ": errno "
    "ba08000000"  #         mov  edx, 8
    "bf02000000b8010000000f05"  # write(2, rsi, rdx)
    "4883ec10"  #           sub  rsp, 16               ; the number and "\n", backwards
    "488d74240f"  #         lea  rsi, [rsp+15]
    "c6060a"  #             mov  byte [rsi], 10
    "89d8"  #               mov  eax, ebx
    "b90a000000"  #         mov  ecx, 10
    "31d2"  #       digit:  xor  edx, edx
    "f7f1"  #               div  ecx
    "80c230"  #             add  dl, '0'
    "48ffce"  #             dec  rsi
    "8816"  #               mov  [rsi], dl
    "85c0"  #               test eax, eax
    "75f0"  #               jnz  digit
    "488d542410"  #         lea  rdx, [rsp+16]
    "4829f2"  #             sub  rdx, rsi
    "bf02000000b8010000000f05"  # write(2, rsi, rdx)
    "bf7e000000"  #         mov  edi, 126              ; cannot be run…
    "83fb02"  #             cmp  ebx, 2
    "7502"  #               jne  leave
    "ffc7"  #               inc  edi                   ; …127: not found (ENOENT)
    "b8e7000000"  # leave:  mov  eax, 231              ; exit_group(edi)
    "0f05"  #               syscall
    "bf7f000000"  # usage:  mov  edi, 127
    "ebf2"  #               jmp  leave
) + b"minidock: exec " + b": errno "  # prefix, middle

_BASE = 0x400000  # where the kernel maps the file (the classic static-executable address)
_ELF_HEADER = 64
_PROGRAM_HEADER = 56
_PT_LOAD, _PT_GNU_STACK = 1, 0x6474E551
_PF_X, _PF_W, _PF_R = 1, 2, 4


def _elf(code: bytes) -> bytes:
    """A static ELF executable that runs ``code``: the ELF header, then two program headers
    — map the whole file readable and executable at _BASE, and give it a non-executable
    stack — then the code, its entry point. No sections, no libc, no dynamic loader."""
    entry_offset = _ELF_HEADER + 2 * _PROGRAM_HEADER
    size = entry_offset + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # e_type: ET_EXEC
        62,  # e_machine: EM_X86_64
        1,  # e_version
        _BASE + entry_offset,  # e_entry
        _ELF_HEADER,  # e_phoff: the program headers follow this header
        0,  # e_shoff: no section headers
        0,  # e_flags
        _ELF_HEADER,
        _PROGRAM_HEADER,
        2,  # e_phnum
        64,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    load = struct.pack("<IIQQQQQQ", _PT_LOAD, _PF_R | _PF_X, 0, _BASE, _BASE, size, size, 0x1000)
    stack = struct.pack("<IIQQQQQQ", _PT_GNU_STACK, _PF_R | _PF_W, 0, 0, 0, 0, 0, 16)
    return header + load + stack + code


TRAMPOLINE = _elf(_CODE)


def execve(program: str, args: list[str], env: dict[str, str], reason: str) -> None:
    """Replace this process with ``program`` by way of the sealed trampoline. Returns only
    if the trampoline itself could not be exec'd (OSError); a failure to exec ``program``
    is the trampoline's to report."""
    fd = syscalls.sealed_memfd(
        "minidock-dmz", TRAMPOLINE, reason="the trampoline: what /proc/self/exe is while it execs"
    )
    syscalls.narrate(
        lambda: f'execve("{program}", {args!r})', f"{reason} (the trampoline's call, exec'd next)"
    )
    syscalls.fexecve(
        fd,
        [program, *args],
        env,
        reason="exec the trampoline: from here on no host binary is this process's executable",
    )
