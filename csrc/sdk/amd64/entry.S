/* entry.S - the guest's entry point and its CPU exception stubs.
 *
 * _start runs at CPL3 like all guest C code. The exception stubs are the only
 * code that runs at CPL0; on kvm-pvm CPL0 is emulated, so they use nothing but
 * push, mov, jmp, out and hlt (docs/abi.md, "Faults"). */

	.text

/* hl_start, the ELF entry point: rsp = top of the stack, rdi = PEB, rsi =
 * seed, rdx = page size, rcx = minimum log level. Those four registers
 * already are the first four SysV arguments of hl_init(), which never
 * returns. Not named _start: the libc's start file defines that one (the
 * link keeps it out of the image, see hlsandbox/sdk/build.py). */
	.globl	hl_start
	.type	hl_start, @function
hl_start:
	andq	$-16, %rsp		/* SysV: rsp is 16-aligned before a call */
	xorl	%ebp, %ebp		/* terminate frame-pointer chains */
	call	hl_init
	ud2				/* not reached: hl_init is noreturn */
	.size	hl_start, . - hl_start

/* hl_exception_stubs: 32 stubs, 16 bytes apart; the host points IDT vector N
 * at hl_exception_stubs + 16 * N. Each stub makes the frame uniform (a zero
 * error code where the CPU pushes none), pushes its vector and jumps to
 * hl_fault_common. Padding between stubs is hlt (0xf4), never executed. */

/* Vectors for which the CPU pushes an error code. */
#define HAS_ERROR_CODE(n) ((n) == 8 || (n) == 10 || (n) == 11 || (n) == 12 || (n) == 13 || \
			   (n) == 14 || (n) == 17 || (n) == 21 || (n) == 29 || (n) == 30)

.macro	HL_STUB vector
	.balign	16, 0xf4
	.if	!HAS_ERROR_CODE(\vector)
	pushq	$0
	.endif
	pushq	$\vector
	jmp	hl_fault_common
.endm

	.balign	16, 0xf4
	.globl	hl_exception_stubs
	.type	hl_exception_stubs, @function
hl_exception_stubs:
	.irp	v, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, \
		   16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
	HL_STUB	\v
	.endr
	.balign	16, 0xf4
	.size	hl_exception_stubs, . - hl_exception_stubs

/* Stack on entry: vector, error code, then the CPU's RIP, CS, RFLAGS, RSP, SS.
 * Push RAX and CR2 so the host can read them at T-64 and T-72, then report
 * the vector on the FAULT port. The host never resumes a faulted guest; the
 * hlt loop only keeps the vCPU parked if it does. */
	.type	hl_fault_common, @function
hl_fault_common:
	pushq	%rax
	movq	%cr2, %rax
	pushq	%rax
	movq	16(%rsp), %rax		/* the vector */
	outb	%al, $110
1:	hlt
	jmp	1b
	.size	hl_fault_common, . - hl_fault_common

	.section .note.GNU-stack, "", @progbits
