/* start32.S - entry point of an i686-profile guest (docs/abi.md, "i686
 * profile (no paging)").
 *
 * The host enters here in 32-bit protected mode, CPL0, no paging, with
 * esp = stack top, eax = PEB address, ebx = low 32 bits of the seed,
 * ecx = page size, edx = minimum log level. Everything here is emulated on
 * kvm-pvm, so it uses only plain integer instructions. */

	.section .text.start, "ax", @progbits
	.code32
	.globl	_start
	.type	_start, @function
_start:
	cld				/* the C code assumes DF=0 (EFLAGS is 0x2 anyway) */
	andl	$-16, %esp		/* four pushes below keep esp 16-aligned at the call */
	xorl	%ebp, %ebp		/* terminate frame-pointer chains */
	pushl	%edx			/* min_log_level */
	pushl	%ecx			/* page_size */
	pushl	%ebx			/* seed */
	pushl	%eax			/* peb */
	call	hl32_main		/* cdecl; never returns */
1:	outb	%al, $108		/* not reached: if it is, halt for good */
	jmp	1b
	.size	_start, . - _start

	.section .note.GNU-stack, "", @progbits
